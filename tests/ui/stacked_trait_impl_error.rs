use cachify::{cached, once};

trait Store {
    fn find(&self, id: i64) -> Result<String, cachify::Error>;
}

struct PgStore;

// An error in a stack on a method is the only error: the layers under it
// do not expand on their own.
#[cachify::trait_impl]
impl Store for PgStore {
    #[cached("user-{name}")]
    #[once("user-{id}")]
    fn find(&self, id: i64) -> Result<String, cachify::Error> {
        Ok(id.to_string())
    }
}

fn main() {}
