use cachify::cached;

#[cached("user-{usr_id}")]
fn read_user(user_id: i64, db: &str) -> Result<String, cachify::Error> {
    Ok(format!("{db}{user_id}"))
}

fn main() {}
