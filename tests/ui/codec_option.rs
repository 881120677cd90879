use cachify::{cached, once};

// `codec` takes a `cachify::Codec`.
#[cached("user-{id}", codec = "json")]
fn user(id: u32) -> u32 {
    id
}

// Only `#[cached]` has entries to encode.
#[once("job-{id}", codec = cachify::Codec::MessagePack)]
fn job(id: u32) -> Result<u32, cachify::Error> {
    Ok(id)
}

fn main() {}
