use cachify::{cached, lock, once};

#[cached(user_id)]
fn by_ident(user_id: i64) -> i64 {
    user_id
}

#[once(42)]
fn by_number() -> Result<(), cachify::Error> {
    Ok(())
}

#[lock(ttl = 30)]
fn no_template() -> Result<(), cachify::Error> {
    Ok(())
}

#[cached]
fn no_arguments() -> i64 {
    1
}

fn main() {}
