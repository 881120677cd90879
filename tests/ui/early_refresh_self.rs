use cachify::cached;

struct Catalog;

impl Catalog {
    #[cached("top", ttl = 60, early_refresh = true)]
    fn top(&self) -> u64 {
        1
    }
}

fn main() {}
