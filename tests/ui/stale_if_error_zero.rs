use cachify::cached;

#[cached("rates", ttl = 60, stale_if_error = 0)]
fn rates() -> Result<u64, String> {
    Ok(1)
}

fn main() {}
