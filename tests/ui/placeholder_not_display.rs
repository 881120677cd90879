use cachify::cached;

pub struct UserId(i64);

#[cached("user-{id}")]
fn read_user(id: UserId) -> i64 {
    id.0
}

fn main() {}
