package io.trainguard.deploy;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import io.smallrye.config.common.utils.StringUtil;

/**
 * Leaf keys of the {@code @ConfigMapping} interfaces, read from their source: method
 * {@code clipThreshold()} in a mapping with prefix {@code trainguard.policy} is key
 * {@code trainguard.policy.clip-threshold}; {@code @WithName} overrides the segment, a method
 * returning another config interface is a group, {@code @WithParentName} adds no segment.
 */
final class ConfigMappingKeys {
    private static final Pattern PREFIX = Pattern.compile("@ConfigMapping\\s*\\(\\s*prefix\\s*=\\s*\"([^\"]+)\"");
    private static final Pattern INTERFACE = Pattern.compile("\\binterface\\s+(\\w+)");
    private static final Pattern METHOD = Pattern.compile("(?:public )?([\\w.]+(?:<[^()]*>)?(?:\\[])?) (\\w+) ?\\( ?\\)");
    private static final Pattern ANNOTATION = Pattern.compile("@[\\w.]+(?:\\s*\\((?:[^()\"]|\"(?:[^\"\\\\]|\\\\.)*\")*\\))?");
    private static final Pattern WITH_NAME = Pattern.compile("@WithName\\s*\\(\\s*\"([^\"]+)\"");

    record Method(String type, String name, String withName, boolean parentName) {
    }

    static Set<String> read(Path dir) throws IOException {
        Map<String, List<Method>> interfaces = new LinkedHashMap<>();
        Map<String, String> roots = new LinkedHashMap<>();
        for (Path f : K8sRenders.javaFiles(dir)) {
            parse(Files.readString(f), interfaces, roots);
        }
        Set<String> keys = new LinkedHashSet<>();
        roots.forEach((iface, prefix) -> collect(iface, prefix, interfaces, keys, 0));
        return keys;
    }

    private static void parse(String src, Map<String, List<Method>> interfaces, Map<String, String> roots) {
        // Split into chunks ending at '{', '}' or ';' (string literals and comments skipped):
        // a chunk before '{' is a declaration header, one before ';' a member.
        String code = src;
        List<Object[]> stack = new ArrayList<>(); // (interface name, depth of its body)
        int depth = 0;
        StringBuilder chunk = new StringBuilder();
        boolean inString = false;
        for (int i = 0; i < code.length(); i++) {
            char ch = code.charAt(i);
            if (inString) {
                chunk.append(ch);
                if (ch == '\\') {
                    chunk.append(code.charAt(++i));
                } else if (ch == '"') {
                    inString = false;
                }
                continue;
            }
            if (ch == '/' && i + 1 < code.length() && code.charAt(i + 1) == '/') {
                int eol = code.indexOf('\n', i);
                i = eol < 0 ? code.length() : eol;
            } else if (ch == '/' && i + 1 < code.length() && code.charAt(i + 1) == '*') {
                int end = code.indexOf("*/", i + 2);
                i = end < 0 ? code.length() : end + 1;
            } else if (ch == '"') {
                inString = true;
                chunk.append(ch);
            } else if (ch == '{') {
                depth++;
                Matcher iface = INTERFACE.matcher(chunk);
                if (iface.find() && !chunk.toString().contains("@interface")) {
                    interfaces.putIfAbsent(iface.group(1), new ArrayList<>());
                    stack.add(new Object[] { iface.group(1), depth });
                    Matcher prefix = PREFIX.matcher(chunk);
                    if (prefix.find()) {
                        roots.put(iface.group(1), prefix.group(1));
                    }
                }
                chunk.setLength(0);
            } else if (ch == '}') {
                if (!stack.isEmpty() && depth == (int) stack.get(stack.size() - 1)[1]) {
                    stack.remove(stack.size() - 1);
                }
                depth--;
                chunk.setLength(0);
            } else if (ch == ';') {
                if (!stack.isEmpty() && depth == (int) stack.get(stack.size() - 1)[1]) {
                    String member = chunk.toString();
                    Matcher withName = WITH_NAME.matcher(member);
                    String name = withName.find() ? withName.group(1) : null;
                    String bare = ANNOTATION.matcher(member).replaceAll(" ").replaceAll("\\s+", " ").trim();
                    Matcher m = METHOD.matcher(bare);
                    if (m.matches()) {
                        interfaces.get((String) stack.get(stack.size() - 1)[0])
                                .add(new Method(m.group(1), m.group(2), name, member.contains("@WithParentName")));
                    }
                }
                chunk.setLength(0);
            } else {
                chunk.append(ch);
            }
        }
    }

    private static void collect(String iface, String prefix, Map<String, List<Method>> interfaces, Set<String> keys, int level) {
        if (level > 10) {
            return;
        }
        for (Method m : interfaces.getOrDefault(iface, List.of())) {
            String segment = m.withName() != null ? m.withName() : kebab(m.name());
            String key = m.parentName() ? prefix : prefix + "." + segment;
            String group = groupType(m.type(), interfaces);
            if (group != null) {
                collect(group, key, interfaces, keys, level + 1);
            } else {
                keys.add(key);
            }
        }
    }

    private static String groupType(String type, Map<String, List<Method>> interfaces) {
        String inner = type.replaceAll("^(?:java\\.util\\.)?Optional<(.*)>$", "$1");
        String simple = inner.substring(inner.lastIndexOf('.') + 1);
        return interfaces.containsKey(simple) ? simple : null;
    }

    /** SmallRye's own KEBAB_CASE naming (spikeZThreshold -> spike-z-threshold). */
    static String kebab(String camel) {
        return StringUtil.skewer(camel);
    }
}
