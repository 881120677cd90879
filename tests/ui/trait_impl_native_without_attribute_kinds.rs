// Every kind, a generic method, a key with an `impl Trait` parameter and
// associated functions that name `Self` in the signature or the body get
// the error naming `#[cachify::trait_impl]` in a plain trait impl without
// it, next to rustc's own "not a member" errors.
use std::fmt::Debug;

use cachify::{cached, lock, once, pooled};

trait Jobs: Sized {
    fn run(&self, id: i64) -> Result<(), cachify::Error>;
    fn start(&self, id: i64) -> Result<(), cachify::Error>;
    fn fetch(&self, id: i64) -> Result<(), cachify::Error>;
    fn show<T: Debug + Clone, const N: usize>(&self, item: [T; N]) -> String;
    fn load(id: i64) -> Option<Self>;
    fn describe(&self, value: impl Debug) -> String;
    fn size(id: i64) -> usize;
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Worker;

impl Jobs for Worker {
    #[lock("run-{id}")]
    fn run(&self, id: i64) -> Result<(), cachify::Error> {
        let _ = id;
        Ok(())
    }

    #[once("start-{id}")]
    fn start(&self, id: i64) -> Result<(), cachify::Error> {
        let _ = id;
        Ok(())
    }

    #[pooled("fetch-{id}", max_size = 2)]
    fn fetch(&self, id: i64) -> Result<(), cachify::Error> {
        let _ = id;
        Ok(())
    }

    #[cached("show-{item:?}")]
    fn show<T: Debug + Clone, const N: usize>(&self, item: [T; N]) -> String {
        format!("{item:?}")
    }

    #[cached("load-{id}")]
    fn load(id: i64) -> Option<Self> {
        let _ = id;
        None
    }

    #[cached("describe-{value:?}")]
    fn describe(&self, value: impl Debug) -> String {
        format!("{value:?}")
    }

    #[cached("size-{id}")]
    fn size(id: i64) -> usize {
        std::mem::size_of::<Self>() + id as usize
    }
}

fn main() {}
