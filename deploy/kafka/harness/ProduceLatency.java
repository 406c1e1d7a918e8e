// tcpsleuth lab: Kafka's Java producer (kafka-clients), each request timed from send() to
// its acknowledgement, with the same JSON lines as tcpsleuth.lab.clients (one object a
// line on standard output: ready, latency, pending, counts, done). Kafka's ProducerPerformance
// prints only averages over a window; the lab needs every request's time and when it was
// sent, to cut them into the phases before, during and after a broker restart.
//
// Compiled by tcpsleuth.lab.kafka_java.harness() against the version's kafka-clients:
//   java -cp <kafka jars>:<harness dir> ProduceLatency --bootstrap HOST:PORT \
//       --crowd 20 --measured 3 --message-bytes 262144 --interval-ms 200 --duration 40
//
// --crowd producers send a small record a second (to hold a connection and to reconnect
// after a restart, as busy clients do); --measured producers send --message-bytes records
// every --interval-ms. Every producer keeps the Java client's reconnect behaviour
// (reconnect.backoff.ms, reconnect.backoff.max.ms: 50 and 1000 ms unless given). The
// measured producers' request timeout is --timeout-ms (60000 unless given; the delivery
// timeout twice that); the crowd keeps 60 s.

import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public final class ProduceLatency {
    static final String LIBRARY = "kafka-clients";
    static final String TOPIC = "lab";
    // standard output carries only our JSON lines; the client's own logging goes to stderr
    static final PrintStream OUT =
            new PrintStream(new FileOutputStream(FileDescriptor.out), true, StandardCharsets.UTF_8);
    static final Map<Long, double[]> OUTSTANDING = new ConcurrentHashMap<>();
    static final AtomicLong NEXT = new AtomicLong();
    // per measured producer: messages sent, acknowledged, failed (an error answer)
    static long[][] tally = new long[0][3];

    static double now() {
        return System.currentTimeMillis() / 1000.0;
    }

    static String quote(String text) {
        StringBuilder out = new StringBuilder("\"");
        for (char c : text.toCharArray()) {
            if (c == '"' || c == '\\') {
                out.append('\\').append(c);
            } else if (c < 0x20) {
                out.append(String.format("\\u%04x", (int) c));
            } else {
                out.append(c);
            }
        }
        return out.append('"').toString();
    }

    static synchronized void emit(String type, String fields) {
        OUT.println("{\"type\": \"" + type + "\", \"library\": \"" + LIBRARY + "\", " + fields + "}");
    }

    static synchronized void count(int producer, int what) {
        tally[producer][what]++;
    }

    static KafkaProducer<byte[], byte[]> producer(
            Map<String, String> options, String id, long timeoutMs) {
        Properties props = new Properties();
        props.put("bootstrap.servers", options.get("bootstrap"));
        props.put("client.id", id);
        props.put("acks", "1");
        props.put("linger.ms", "0");
        props.put("max.request.size", "4000000");
        props.put("request.timeout.ms", Long.toString(timeoutMs));
        props.put("delivery.timeout.ms", Long.toString(2 * timeoutMs));
        props.put("max.block.ms", "60000");
        props.put("reconnect.backoff.ms", options.get("reconnect-backoff-ms"));
        props.put("reconnect.backoff.max.ms", options.get("reconnect-backoff-max-ms"));
        props.put("key.serializer", ByteArraySerializer.class.getName());
        props.put("value.serializer", ByteArraySerializer.class.getName());
        return new KafkaProducer<>(props);
    }

    public static void main(String[] args) throws Exception {
        System.setOut(System.err);
        Map<String, String> options = new HashMap<>();
        options.put("crowd", "20");
        options.put("measured", "3");
        options.put("message-bytes", "65536");
        options.put("interval-ms", "100");
        options.put("duration", "30");
        options.put("reconnect-backoff-ms", "50");
        options.put("reconnect-backoff-max-ms", "1000");
        options.put("timeout-ms", "60000");
        // the run asks the producers to end now, the way their duration would, by
        // creating this file (its phases last what they last under an emulated CPU)
        options.put("stop-file", "");
        for (int i = 0; i + 1 < args.length; i += 2) {
            if (!args[i].startsWith("--")) {
                throw new IllegalArgumentException("expected --option value, got " + args[i]);
            }
            options.put(args[i].substring(2), args[i + 1]);
        }
        if (!options.containsKey("bootstrap")) {
            throw new IllegalArgumentException("--bootstrap HOST:PORT is required");
        }
        int crowdCount = Integer.parseInt(options.get("crowd"));
        int measuredCount = Integer.parseInt(options.get("measured"));
        byte[] payload = new byte[Integer.parseInt(options.get("message-bytes"))];
        java.util.Arrays.fill(payload, (byte) 'm');
        byte[] small = new byte[256];
        java.util.Arrays.fill(small, (byte) 'c');
        double interval = Double.parseDouble(options.get("interval-ms")) / 1000.0;
        double duration = Double.parseDouble(options.get("duration"));

        tally = new long[measuredCount][3];
        List<KafkaProducer<byte[], byte[]>> crowd = new ArrayList<>();
        List<KafkaProducer<byte[], byte[]>> measured = new ArrayList<>();
        for (int i = 0; i < crowdCount; i++) {
            crowd.add(producer(options, "java-crowd-" + i, 60000));
        }
        for (int i = 0; i < measuredCount; i++) {
            measured.add(producer(
                    options, "java-measured-" + i, Long.parseLong(options.get("timeout-ms"))));
        }
        emit("ready", "\"crowd\": " + crowdCount + ", \"measured\": " + measuredCount
                + ", \"t\": " + now());

        long start = System.nanoTime();
        double[] nextMeasured = new double[measuredCount];
        double[] nextCrowd = new double[crowdCount];
        for (int i = 0; i < measuredCount; i++) {
            nextMeasured[i] = interval * i / Math.max(1, measuredCount);
        }
        for (int i = 0; i < crowdCount; i++) {
            nextCrowd[i] = (double) i / Math.max(1, crowdCount);
        }
        java.io.File stopFile = new java.io.File(options.get("stop-file"));
        boolean stoppable = !options.get("stop-file").isEmpty();
        double elapsed;
        double nextLook = 0;
        while ((elapsed = (System.nanoTime() - start) / 1e9) < duration) {
            if (stoppable && elapsed >= nextLook) {
                if (stopFile.exists()) {
                    break;
                }
                nextLook = elapsed + 0.1;
            }
            for (int i = 0; i < measuredCount; i++) {
                if (elapsed >= nextMeasured[i]) {
                    send(measured.get(i), i, payload);
                    nextMeasured[i] += interval;
                }
            }
            for (int i = 0; i < crowdCount; i++) {
                if (elapsed >= nextCrowd[i]) {
                    crowd.get(i).send(new ProducerRecord<>(TOPIC, small));
                    nextCrowd[i] += 1.0;
                }
            }
            Thread.sleep(2);
        }
        long deadline = System.nanoTime() + 5_000_000_000L;
        for (KafkaProducer<byte[], byte[]> p : measured) {
            long left = Math.max(0, deadline - System.nanoTime());
            p.close(Duration.ofNanos(left));
        }
        double at = now();
        for (double[] open : OUTSTANDING.values()) {
            emit("pending", "\"producer\": " + (int) open[0] + ", \"sent\": " + open[1]
                    + ", \"waited_ms\": " + (at - open[1]) * 1000);
        }
        // what each measured producer counted, as tcpsleuth.lab.clients reports it: lost
        // is what was sent and not acknowledged (failed, or still waiting now)
        synchronized (ProduceLatency.class) {
            for (int i = 0; i < measuredCount; i++) {
                long[] t = tally[i];
                emit("counts", "\"producer\": " + i + ", \"sent\": " + t[0]
                        + ", \"acknowledged\": " + t[1] + ", \"failed\": " + t[2]
                        + ", \"pending\": " + (t[0] - t[1] - t[2]) + ", \"lost\": " + (t[0] - t[1]));
            }
        }
        emit("done", "\"t\": " + now());
        OUT.flush();
        // closing hundreds of producers one by one takes longer than the run; exit closes
        // their sockets at once
        Runtime.getRuntime().halt(0);
    }

    static void send(KafkaProducer<byte[], byte[]> producer, int index, byte[] payload) {
        long id = NEXT.incrementAndGet();
        double sent = now();
        long began = System.nanoTime();
        OUTSTANDING.put(id, new double[] {index, sent});
        count(index, 0);
        try {
            producer.send(new ProducerRecord<>(TOPIC, payload), (metadata, error) -> {
                if (OUTSTANDING.remove(id) == null) {
                    return;
                }
                count(index, error == null ? 1 : 2);
                double latency = (System.nanoTime() - began) / 1e6;
                emit("latency", "\"producer\": " + index + ", \"sent\": " + sent
                        + ", \"latency_ms\": " + latency + ", \"error\": "
                        + (error == null ? "null" : quote(error.toString())));
            });
        } catch (RuntimeException error) {
            // send() itself failed (no metadata within max.block.ms): an error answer
            if (OUTSTANDING.remove(id) != null) {
                count(index, 2);
                double latency = (System.nanoTime() - began) / 1e6;
                emit("latency", "\"producer\": " + index + ", \"sent\": " + sent
                        + ", \"latency_ms\": " + latency + ", \"error\": " + quote(error.toString()));
            }
        }
    }
}
