#[cachify::trait_impl]
struct PgStore {
    id: i64,
}

fn main() {}
