#[extension_api::exposed]
pub trait Store {
    async fn put<T>(&self, value: T);
}

fn main() {}
