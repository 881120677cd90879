use cachify::{cached, once};

#[cached("a-{id}", tags = "users")]
fn not_an_array(id: u64) -> u64 {
    id
}

const USERS: &str = "users";

#[cached("b-{id}", tags = ["users", USERS])]
fn not_a_literal(id: u64) -> u64 {
    id
}

#[cached("c-{id}", tags = [""])]
fn empty_tag(id: u64) -> u64 {
    id
}

#[cached("d-{id}", tags = ["a"], tags = ["b"])]
fn twice(id: u64) -> u64 {
    id
}

#[once("e-{id}", tags = ["users"])]
fn on_once(id: u64) -> Result<u64, cachify::Error> {
    Ok(id)
}

fn main() {}
