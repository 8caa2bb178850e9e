# The balancer: one statically linked binary, nothing else. Built by jobs/build-images.sh from
# a context holding only that binary, so no base image is ever pulled.
FROM scratch
COPY balancer /balancer
USER 10001:10001
ENV HOST_PORT_HTTP_BALANCER=8000 HOST_PORT_ADMIN_BALANCER=8001
EXPOSE 8000 8001
HEALTHCHECK --interval=2s --timeout=2s --start-period=1s --retries=3 CMD ["/balancer", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/balancer"]
