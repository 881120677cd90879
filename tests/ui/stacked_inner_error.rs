use cachify::{cached, lock};

// An error in an inner layer is reported once, at the inner layer.
#[cached("user-{id}")]
#[lock("user-{name}", wait = 1)]
fn user(id: u32) -> Result<u32, cachify::Error> {
    Ok(id)
}

// And so is one in the outer layer, with the inner one untouched.
#[cached("user-{id}", wait = 1)]
#[lock("user-{id}")]
fn other(id: u32) -> Result<u32, cachify::Error> {
    Ok(id)
}

fn main() {}
