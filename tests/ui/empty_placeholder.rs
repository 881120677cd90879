use cachify::cached;

#[cached("user-{}")]
fn read_user(user_id: i64) -> i64 {
    user_id
}

fn main() {}
