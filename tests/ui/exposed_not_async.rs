#[extension_api::exposed]
pub trait Clock {
    fn now(&self) -> u64;
}

fn main() {}
