use std::fmt::Display;

use cachify::cached;

trait Named<K> {
    fn name(&self, key: K) -> String;
}

struct Store;

#[cachify::trait_impl]
impl<K: Display> Named<K> for Store {
    #[cached("name-{key}")]
    fn name(&self, key: K) -> String {
        key.to_string()
    }
}

fn main() {}
