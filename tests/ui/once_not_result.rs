use cachify::once;

#[once("job-{id}")]
fn job(id: u32) -> u32 {
    id
}

#[once("sweep")]
async fn sweep() {}

fn main() {}
