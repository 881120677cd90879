use cachify::cached;

#[cached("top-{region}", ttl = 60, early_refresh = true)]
async fn top(region: &str) -> u64 {
    region.len() as u64
}

#[derive(Debug)]
struct Handle;

impl std::fmt::Display for Handle {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("handle")
    }
}

#[cached("count-{handle}", ttl = 60, early_refresh = true)]
fn count(handle: Handle) -> u64 {
    let _ = handle;
    1
}

fn main() {}
