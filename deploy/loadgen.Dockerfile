# loadgen: traces, load and reports, for driving a stack from inside its network.
FROM scratch
COPY loadgen /loadgen
USER 65534:65534
ENTRYPOINT ["/loadgen"]
