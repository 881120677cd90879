use cachify::cached;

#[cached("user")]
struct User {
    id: i64,
}

fn main() {}
