# Multi-stage build: a static connector binary on a minimal, non-root image.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/connector ./cmd/connector

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/connector /usr/local/bin/connector
USER nonroot:nonroot
WORKDIR /var/lib/ktsink
VOLUME ["/var/lib/ktsink"]
EXPOSE 9000
ENTRYPOINT ["/usr/local/bin/connector"]
CMD ["run"]
