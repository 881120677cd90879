use cachify::{cached, lock, once};

#[once("job-{id}", wait = 5)]
fn job(id: u32) -> Result<u32, cachify::Error> {
    Ok(id)
}

#[lock("report-{id}", unless = |_: &u32| false)]
fn report(id: u32) -> Result<u32, cachify::Error> {
    Ok(id)
}

#[cached("user-{id}", return_on_locked = 0)]
fn user(id: u32) -> u32 {
    id
}

fn main() {}
