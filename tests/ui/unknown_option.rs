use cachify::cached;

#[cached("user-{user_id}", ttll = 300)]
fn read_user(user_id: i64) -> i64 {
    user_id
}

fn main() {}
