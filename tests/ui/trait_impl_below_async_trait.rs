use async_trait::async_trait;
use cachify::cached;

#[async_trait]
trait UserStore {
    async fn find(&self, id: i64) -> Result<String, String>;
}

struct PgStore;

#[async_trait]
#[cachify::trait_impl]
impl UserStore for PgStore {
    #[cached("user-{id}")]
    async fn find(&self, id: i64) -> Result<String, String> {
        Ok(id.to_string())
    }
}

fn main() {}
