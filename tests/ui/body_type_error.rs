// Type errors in a wrapped body are reported in the user's code, not in
// macro output.
use cachify::{cached, once};

#[cached("label-{n}")]
async fn label(n: u32) -> String {
    n + 1
}

#[once("job-{id}", return_on_locked = 0)]
fn job(id: u32) -> u32 {
    let name: String = id;
    name.len() as u32
}

fn main() {}
