package io.trainguard.api;

import io.restassured.RestAssured;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;

/** Real gRPC stubs to the @QuarkusTest app, whose random port RestAssured knows once a test starts. */
abstract class SidecarTestSupport {
    protected Sidecar sidecar;

    @BeforeEach
    void connect() {
        sidecar = new Sidecar(RestAssured.port);
    }

    @AfterEach
    void disconnect() throws InterruptedException {
        sidecar.close();
    }
}
