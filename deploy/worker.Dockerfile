# The worker: one statically linked binary, nothing else. Built by jobs/build-images.sh from
# a context holding only that binary, so no base image is ever pulled.
FROM scratch
COPY worker /worker
USER 10001:10001
ENV TARGET_PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=2s --timeout=2s --start-period=1s --retries=3 CMD ["/worker", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/worker"]
