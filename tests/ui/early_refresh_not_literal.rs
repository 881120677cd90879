use cachify::cached;

const REFRESH: bool = true;

#[cached("top", ttl = 60, early_refresh = REFRESH)]
fn top() -> u64 {
    1
}

fn main() {}
