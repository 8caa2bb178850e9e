# The deployment agent: one statically linked binary, run as an unprivileged user. It talks to
# the Docker socket mounted at `/var/run/docker.sock` through the socket's group: compose adds
# that group (`group_add`, the gid found by jobs/run.sh); by hand,
# `docker run --group-add "$(stat -c %g /var/run/docker.sock)" -v /var/run/docker.sock:/var/run/docker.sock ...`.
FROM scratch
COPY deployment-agent /deployment-agent
USER 10001:10001
EXPOSE 9000 9001 9002
HEALTHCHECK --interval=2s --timeout=2s --start-period=2s --retries=3 CMD ["/deployment-agent", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/deployment-agent"]
