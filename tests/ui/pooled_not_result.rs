use cachify::pooled;

#[pooled("thumb-{id}", max_size = 8)]
fn thumbnail(id: u64) -> Option<Vec<u8>> {
    Some(vec![id as u8])
}

fn main() {}
