use cachify::{cached, lock};

trait Store {
    fn find(&self, id: i64) -> Result<String, cachify::Error>;
}

struct PgStore;

#[cachify::trait_impl]
impl Store for PgStore {
    #[cached("user-{id}")]
    #[lock("user-{id}")]
    fn find(&self, id: i64) -> Result<String, cachify::Error> {
        Ok(id.to_string())
    }
}

fn main() {}
