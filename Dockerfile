# herd: multi-stage build of a static binary, run as a non-root user.
#   docker build -t herd --build-arg VERSION=$(git describe --always) .
#   docker run -p 4000:4000 -v $PWD/config.yaml:/config.yaml herd --config /config.yaml
# The fake upstream (cmd/fakeupstream, for demos such as deploy/compose.yaml) is a second target:
#   docker build -t herd-fakeupstream --target fakeupstream .
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/herd ./cmd/herd
# An empty directory to become /var/lib/herd, the data dir a volume can be mounted on.
RUN mkdir -p /out/data

# Built only when asked for (--target fakeupstream, or a compose service's build.target).
FROM build AS build-fakeupstream
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/fakeupstream ./cmd/fakeupstream

FROM gcr.io/distroless/static-debian12:nonroot AS fakeupstream
COPY --from=build-fakeupstream /out/fakeupstream /usr/local/bin/fakeupstream
USER nonroot:nonroot
EXPOSE 8081
ENTRYPOINT ["/usr/local/bin/fakeupstream"]
CMD ["--addr", "0.0.0.0:8081"]

# herd is the last stage, so a plain `docker build .` still builds it.
FROM gcr.io/distroless/static-debian12:nonroot AS herd
COPY --from=build /out/herd /usr/local/bin/herd
# Owned by nonroot (65532) so that a fresh named volume mounted here is writable: Docker copies
# the image directory's ownership into an empty volume. `--data-dir /var/lib/herd` keeps raft there.
COPY --from=build --chown=65532:65532 /out/data /var/lib/herd
USER nonroot:nonroot
# 4000: the OpenAI-compatible HTTP API, /health/*, /metrics.
# 7946 tcp+udp: gossip (memberlist) between herd nodes; 7947 tcp: raft (gossip port + 1).
EXPOSE 4000 7946/tcp 7946/udp 7947/tcp
ENTRYPOINT ["/usr/local/bin/herd"]
CMD ["--host", "0.0.0.0", "--port", "4000"]
