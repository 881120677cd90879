use cachify::cached;

pub struct Filter {
    ids: Vec<u64>,
}

#[cached("users-{filter:?}")]
fn find_users(filter: Filter) -> usize {
    filter.ids.len()
}

fn main() {}
