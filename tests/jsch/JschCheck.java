// JSch 0.1.55 (Debian's libjsch-java) against the gateway, run in source-file mode by
// tests/jsch.rs: java -cp /usr/share/java/jsch.jar JschCheck.java PORT USER KEY KNOWN_HOSTS SRC DOWNLOAD
// Verifies the host key against KNOWN_HOSTS, uploads a third of SRC, resumes it with
// ChannelSftp.RESUME, lists, stats, downloads and prints the download's sha256.
import com.jcraft.jsch.ChannelSftp;
import com.jcraft.jsch.JSch;
import com.jcraft.jsch.Logger;
import com.jcraft.jsch.Session;
import java.io.ByteArrayInputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.util.Arrays;
import java.util.HexFormat;
import java.util.Vector;

public class JschCheck {
    public static void main(String[] args) throws Exception {
        int port = Integer.parseInt(args[0]);
        String user = args[1];
        // JSch's own log on stderr, so that a failed negotiation says what was offered.
        JSch.setLogger(new Logger() {
            public boolean isEnabled(int level) { return level >= Logger.INFO; }
            public void log(int level, String message) { System.err.println("jsch: " + message); }
        });
        JSch jsch = new JSch();
        jsch.addIdentity(args[2]);
        jsch.setKnownHosts(args[3]);
        Session session = jsch.getSession(user, "127.0.0.1", port);
        session.setConfig("StrictHostKeyChecking", "yes");
        session.setConfig("PreferredAuthentications", "publickey");
        session.connect(15000);
        System.out.println("hostkey " + session.getHostKey().getType());
        ChannelSftp sftp = (ChannelSftp) session.openChannel("sftp");
        sftp.connect(15000);

        byte[] src = Files.readAllBytes(Path.of(args[4]));
        // An upload cut short after a third...
        sftp.put(new ByteArrayInputStream(Arrays.copyOf(src, src.length / 3)), "db.dump");
        System.out.println("partial " + sftp.stat("db.dump").getSize());
        // ...resumed: JSch stats the remote size and sends only the rest.
        sftp.put(args[4], "db.dump", ChannelSftp.RESUME);
        System.out.println("size " + sftp.stat("db.dump").getSize());
        Vector<?> entries = sftp.ls(".");
        for (Object o : entries) {
            String name = ((ChannelSftp.LsEntry) o).getFilename();
            if (!name.equals(".") && !name.equals("..")) {
                System.out.println("ls " + name);
            }
        }
        sftp.get("db.dump", args[5]);
        byte[] back = Files.readAllBytes(Path.of(args[5]));
        String hex = HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(back));
        System.out.println("sha256 " + hex);
        sftp.disconnect();
        session.disconnect();
    }
}
