// Errors in one method's attribute are reported as on a function, and alone.
use cachify::{cached, once};

trait Store {
    fn find(&self, id: i64) -> String;
    fn load(&self, id: i64) -> String;
    fn save(&self, id: i64) -> u32;
}

struct PgStore;

#[cachify::trait_impl]
impl Store for PgStore {
    #[cached]
    fn find(&self, id: i64) -> String {
        id.to_string()
    }

    #[cached("user-{user_id}")]
    fn load(&self, id: i64) -> String {
        id.to_string()
    }

    #[once("save-{id}")]
    fn save(&self, id: i64) -> u32 {
        id as u32
    }
}

fn main() {}
