use cachify::{lock, once};

#[derive(Debug)]
struct AppError;

impl From<cachify::Error> for AppError {
    fn from(_: cachify::Error) -> Self {
        AppError
    }
}

// A lock's lease must end: `ttl = None` means "never expires" on `#[cached]` only.
#[once("job-{id}", ttl = None)]
fn job(id: u32) -> Result<u32, AppError> {
    Ok(id)
}

#[lock("report-{id}", ttl = Option::None)]
fn report(id: u32) -> Result<u32, AppError> {
    Ok(id)
}

#[cachify::cached("user-{id}", none_ttl = None)]
fn user(id: u32) -> Option<u32> {
    Some(id)
}

fn main() {}
