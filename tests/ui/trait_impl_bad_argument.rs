trait Store {}

struct PgStore;

#[cachify::trait_impl(ttl = 3)]
impl Store for PgStore {}

fn main() {}
