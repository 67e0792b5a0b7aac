# The atp binary on a slim Debian image (used by compose.yaml).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin atp

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 atp
COPY --from=build /src/target/release/atp /usr/local/bin/atp
USER atp
ENTRYPOINT ["atp"]
