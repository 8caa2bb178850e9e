# loadgen: traces, load and reports, for driving a stack from inside its network.
FROM scratch
COPY loadgen /loadgen
USER 10001:10001
ENTRYPOINT ["/loadgen"]
