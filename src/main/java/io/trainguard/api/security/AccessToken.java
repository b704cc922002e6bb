package io.trainguard.api.security;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;

/**
 * The shared bearer token, kept only as its SHA-256. Presented tokens are hashed and compared with
 * {@link MessageDigest#isEqual} (constant time, and equal-length digests leak no token length).
 */
public final class AccessToken {
    /** Tokens shorter than this are refused at start: a guessable token is no protection. */
    public static final int MIN_LENGTH = 16;
    private final byte[] digest;

    private AccessToken(byte[] digest) {
        this.digest = digest;
    }

    public static AccessToken of(String token) {
        if (token == null || token.length() < MIN_LENGTH) {
            throw new IllegalArgumentException("the trainguard token must be at least " + MIN_LENGTH
                    + " characters (e.g. `openssl rand -hex 32`)");
        }
        return new AccessToken(sha256(token));
    }

    /** Reads the token from a file (surrounding whitespace and a trailing newline are ignored). */
    public static AccessToken fromFile(Path file) {
        String text;
        try {
            text = Files.readString(file, StandardCharsets.UTF_8).strip();
        } catch (IOException e) {
            throw new IllegalStateException("cannot read the trainguard token file " + file + " ("
                    + e.getClass().getSimpleName() + "); check trainguard.auth.token-file / TRAINGUARD_AUTH_TOKEN_FILE "
                    + "and the Secret mount", e);
        }
        try {
            return of(text);
        } catch (IllegalArgumentException e) {
            throw new IllegalStateException("token file " + file + ": " + e.getMessage(), e);
        }
    }

    /** Checks an {@code Authorization} header value ("Bearer <token>"); null or malformed is false. */
    public boolean acceptsHeader(String authorization) {
        if (authorization == null || !authorization.regionMatches(true, 0, "Bearer ", 0, 7)) {
            return false;
        }
        return MessageDigest.isEqual(digest, sha256(authorization.substring(7).strip()));
    }

    private static byte[] sha256(String s) {
        try {
            return MessageDigest.getInstance("SHA-256").digest(s.getBytes(StandardCharsets.UTF_8));
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }
}
