// Without `#[cachify::trait_impl]` on a native trait impl, `#[cached]` cannot
// tell the method from an inherent one: rustc reports the siblings as not
// members of the trait, and the method's check names the fix.
use cachify::cached;

trait UserStore {
    async fn find(&self, id: i64) -> Result<String, String>;
}

struct PgStore;

impl UserStore for PgStore {
    #[cached("user-{id}")]
    async fn find(&self, id: i64) -> Result<String, String> {
        Ok(id.to_string())
    }
}

fn main() {}
