use cachify::{cached, once};

fn client() -> &'static cachify::Cachify {
    cachify::global()
}

// The same template on the same client: the inner layer would only repeat the outer one.
#[cached("user-{id}", ttl = 5)]
#[cached("user-{id}", ttl = 300)]
fn user(id: u32) -> u32 {
    id
}

// The inner lock would never be free while the outer one holds it.
#[once("job-{id}", client = client())]
#[once("job-{id}", client = client())]
fn job(id: u32) -> Result<u32, cachify::Error> {
    Ok(id)
}

// Other clients or other kinds are fine: this one compiles.
#[cached("user-{id}", ttl = 5, client = client())]
#[cached("user-{id}", ttl = 300)]
#[once("user-{id}")]
fn fine(id: u32) -> Result<u32, cachify::Error> {
    Ok(id)
}

fn main() {}
