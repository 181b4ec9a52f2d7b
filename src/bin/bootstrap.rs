//! The AWS Lambda binary (`cargo lambda build --release --arm64 --features
//! lambda --bin bootstrap`): a shim over `triggers_api::lambda`.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    triggers_api::lambda::run().await
}
