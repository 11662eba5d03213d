// One OpenSearch node on 127.0.0.1 for hostaudit's tests and benchmarks (started by ops/opensearch/node.py).
// Usage: java -cp 'classes:lib/*' OneNode BASE_DIR HTTP_PORT CLUSTER_NAME   (HTTP_PORT 0 = any free port)
// Prints "HOSTAUDIT-OPENSEARCH-READY http://127.0.0.1:PORT" (through log4j's stdout logger) once the cluster
// is yellow; SIGTERM closes the node, then log4j.

import static org.codelibs.opensearch.runner.OpenSearchRunner.newConfigs;

import org.apache.logging.log4j.LogManager;
import org.codelibs.opensearch.runner.OpenSearchRunner;
import org.opensearch.http.HttpServerTransport;

public final class OneNode {
    static final String READY = "HOSTAUDIT-OPENSEARCH-READY";
    static final String FAILED = "HOSTAUDIT-OPENSEARCH-FAILED";

    private OneNode() {
    }

    public static void main(String[] args) throws Exception {
        // log4j's own shutdown hook would race the node's close and cut the log: ours shuts log4j down last.
        System.setProperty("log4j.shutdownHookEnabled", "false");
        if (args.length != 3) {
            System.err.println("usage: OneNode BASE_DIR HTTP_PORT CLUSTER_NAME");
            System.exit(2);
        }
        final String base = args[0];
        final String httpPort = args[1];
        final String cluster = args[2];
        final OpenSearchRunner runner = new OpenSearchRunner();
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                if (!runner.isClosed()) {
                    runner.close();
                }
            } catch (Exception e) {
                System.err.println("closing the node failed: " + e);
            } finally {
                LogManager.shutdown();
            }
        }, "hostaudit-node-close"));
        runner.setMaxHttpPort(-1); // no probe of ports 9201-9299: http.port is set below
        runner.onBuild((index, settings) -> {
            settings.put("discovery.type", "single-node");
            settings.put("network.host", "127.0.0.1");
            settings.put("http.port", httpPort);
            settings.put("transport.port", "0");
            settings.put("cluster.routing.allocation.disk.threshold_enabled", false);
        });
        try {
            runner.build(newConfigs().basePath(base).numOfNode(1).clusterName(cluster));
            runner.ensureYellow();
            int port = runner.node().injector().getInstance(HttpServerTransport.class)
                    .boundAddress().publishAddress().getPort();
            System.out.println(READY + " http://127.0.0.1:" + port);
        } catch (Throwable t) {
            StringBuilder why = new StringBuilder(t.toString());
            for (Throwable c = t.getCause(); c != null && c != c.getCause(); c = c.getCause()) {
                why.append("; caused by ").append(c);
            }
            System.err.println(FAILED + " " + why); // one line: node.py puts it in its error message
            t.printStackTrace();
            System.exit(1);
        }
        // The runner starts no keep-alive thread (OpenSearch's Bootstrap would): block until SIGTERM runs the hook.
        Thread.currentThread().join();
    }
}
