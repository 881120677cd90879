use cachify::cached;

#[cached("user-{user id}")]
fn read_user(user: i64, id: i64) -> i64 {
    user + id
}

fn main() {}
