use cachify::cached;

#[cached("user-{id}", none_ttl = 0)]
fn find_user(id: u64) -> Option<String> {
    Some(id.to_string())
}

fn main() {}
