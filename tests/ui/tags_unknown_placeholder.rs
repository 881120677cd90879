use cachify::cached;

#[cached("user-{id}", tags = ["users", "user:{uid}"])]
fn read_user(id: u64) -> u64 {
    id
}

#[cached("order-{id}", tags = ["order:{id"])]
fn read_order(id: u64) -> u64 {
    id
}

fn main() {}
