# herd: multi-stage build of a static binary, run as a non-root user.
#   docker build -t herd --build-arg VERSION=$(git describe --always) .
#   docker run -p 4000:4000 -v $PWD/config.yaml:/config.yaml herd --config /config.yaml
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/herd ./cmd/herd

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/herd /usr/local/bin/herd
USER nonroot:nonroot
# 4000: the OpenAI-compatible HTTP API, /health/*, /metrics.
# 7946 tcp+udp: gossip (memberlist) between herd nodes; 7947 tcp: raft (gossip port + 1).
EXPOSE 4000 7946/tcp 7946/udp 7947/tcp
ENTRYPOINT ["/usr/local/bin/herd"]
CMD ["--host", "0.0.0.0", "--port", "4000"]
