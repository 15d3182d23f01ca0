# cutover in a container (docker-compose.yml's `cutover` service runs `cutover serve`).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin cutover

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/cutover /usr/local/bin/cutover
COPY pipelines /app/pipelines
COPY mappings /app/mappings
WORKDIR /app
EXPOSE 8088
ENTRYPOINT ["cutover"]
CMD ["serve", "--listen", "0.0.0.0:8088"]
