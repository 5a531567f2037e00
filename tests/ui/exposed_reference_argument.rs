#[extension_api::exposed]
pub trait Logger {
    async fn log(&self, message: &str) -> bool;
}

fn main() {}
