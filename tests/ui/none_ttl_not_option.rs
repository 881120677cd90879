use cachify::cached;

#[cached("count-{id}", none_ttl = 5)]
fn count(id: u64) -> Result<u64, String> {
    Ok(id)
}

fn main() {}
