pub struct NotSerialize;

#[extension_api::exposed]
pub trait Files {
    async fn read(&self, name: String) -> Result<String, NotSerialize>;
}

fn main() {}
