use cachify::cached;

struct PgStore;

#[cachify::trait_impl]
impl PgStore {
    #[cached("user-{id}")]
    fn find(&self, id: i64) -> String {
        id.to_string()
    }
}

fn main() {}
