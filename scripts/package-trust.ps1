# Offline package trust for Windows PowerShell 5.1 and PowerShell 7, dot-sourced by load-images.ps1 and
# install.ps1; step for step with package-trust.sh. The key that verifies a package never comes from the
# package: the vendor's certificate (vendor_package.crt) or its sha256 fingerprint reaches the site out of
# band. Verification uses only what Windows ships (.NET: X509Certificate2, RSA-PSS over SHA-256; tar.exe):
# no openssl. Every path given is taken literally (-LiteralPath, .NET): '[1]' in a folder name is no wildcard.

# Set by Initialize-PackageStaging for the scripts that dot-source this file: the vendor's certificate and the
# package, both private copies in Staging (a folder only Administrators and SYSTEM may open, removed by
# Remove-PackageStaging).
$script:VendorCert = ''
$script:Staged = ''
$script:Staging = ''
$script:NoKeySentence = 'no vendor key given: pass -VendorKey vendor_package.crt or -VendorFingerprint HEX, which the vendor sends with your licence token (never trust a key from inside the package).'
# Latin-1: one character per byte, so a BOM, a CR, a NUL or any byte outside ASCII stays visible to a check.
$script:Latin1 = [System.Text.Encoding]::GetEncoding(28591)

# --- access control: what the installer makes is Administrators' and SYSTEM's alone ----------------------
# Named by well-known SID (BUILTIN\Administrators S-1-5-32-544, NT AUTHORITY\SYSTEM S-1-5-18), never by name:
# a localized Windows spells the names otherwise.
$script:AdminsSid = New-Object System.Security.Principal.SecurityIdentifier 'S-1-5-32-544'
$script:SystemSid = New-Object System.Security.Principal.SecurityIdentifier 'S-1-5-18'

# A security descriptor with Administrators and SYSTEM (and Sid with Rights, if given) alone, inheritance
# from above removed; a folder's entries are inherited by what it holds (Sid's only if SidInherits). It starts
# from .NET's empty access list (no one), not from a null one (everyone).
function New-PrivateSecurity([bool]$Folder, [string]$Sid = '', [string]$Rights = '', [bool]$SidInherits = $true) {
    if ($Folder) {
        $security = New-Object System.Security.AccessControl.DirectorySecurity
        $inherit = [System.Security.AccessControl.InheritanceFlags]'ContainerInherit, ObjectInherit'
    } else {
        $security = New-Object System.Security.AccessControl.FileSecurity
        $inherit = [System.Security.AccessControl.InheritanceFlags]::None
    }
    $security.SetAccessRuleProtection($true, $false)
    foreach ($builtin in $script:AdminsSid, $script:SystemSid) {
        $security.AddAccessRule((New-Object System.Security.AccessControl.FileSystemAccessRule -ArgumentList $builtin, 'FullControl', $inherit, 'None', 'Allow'))
    }
    if ($Sid) {
        if (-not $SidInherits) { $inherit = [System.Security.AccessControl.InheritanceFlags]::None }
        $grantee = New-Object System.Security.Principal.SecurityIdentifier $Sid
        $security.AddAccessRule((New-Object System.Security.AccessControl.FileSystemAccessRule -ArgumentList $grantee, $Rights, $inherit, 'None', 'Allow'))
    }
    $security.SetOwner($script:AdminsSid)
    return $security
}

# Writes Security (owner and access entries) to the file or folder Path itself, by .NET (Set-Acl would also
# try to write what the descriptor does not set). A link is never written through: its target stays as it is.
function Set-ItemSecurity([string]$Path, $Security) {
    $item = Get-Item -LiteralPath $Path -Force
    if ($item.Attributes -band [System.IO.FileAttributes]::ReparsePoint) { throw "$Path is not a regular file (a link, FIFO or device there is refused, and not read); put the file itself there." }
    if ($PSVersionTable.PSEdition -eq 'Core') { [System.IO.FileSystemAclExtensions]::SetAccessControl($item, $Security) }
    else { $item.SetAccessControl($Security) }
}

# Path (a file or folder that exists) becomes Administrators' and SYSTEM's alone, plus Sid with Rights if given.
function Set-PrivateAccess([string]$Path, [string]$Sid = '', [string]$Rights = '', [bool]$SidInherits = $true) {
    $folder = (Get-Item -LiteralPath $Path -Force).PSIsContainer
    Set-ItemSecurity $Path (New-PrivateSecurity $folder $Sid $Rights $SidInherits)
}

# Path (a file or folder that exists) keeps no access entry of its own: it has those its folder hands down,
# and Administrators as owner (an owner may always rewrite the entries). Inheritance is switched back on.
function Reset-ItemAccess([string]$Path) {
    $folder = (Get-Item -LiteralPath $Path -Force).PSIsContainer
    if ($folder) { $security = New-Object System.Security.AccessControl.DirectorySecurity }
    else { $security = New-Object System.Security.AccessControl.FileSecurity }
    $security.SetAccessRuleProtection($false, $false)
    $security.SetOwner($script:AdminsSid)
    Set-ItemSecurity $Path $security
}

# A new folder Path, created with the private descriptor already on it (no moment in which it inherits
# what its parent grants); refused if anything is at Path already.
function New-PrivateFolder([string]$Path) {
    if (Test-Entry $Path) { throw "$Path exists already; remove it and run this again." }
    $security = New-PrivateSecurity $true
    if ($PSVersionTable.PSEdition -eq 'Core') { [void][System.IO.FileSystemAclExtensions]::CreateDirectory($security, $Path) }
    else { [void][System.IO.Directory]::CreateDirectory($Path, $security) }
}

# $true when anything is at Path: a file, a folder, or a link (even one whose target is gone).
function Test-Entry([string]$Path) {
    return [bool](Get-Item -LiteralPath $Path -Force -ErrorAction SilentlyContinue)
}

# Path, whatever the current location, made absolute without reading the disk or expanding wildcards (.NET
# resolves relative paths against the process's folder, not PowerShell's).
function Get-FullPath([string]$Path) {
    return $ExecutionContext.SessionState.Path.GetUnresolvedProviderPathFromPSPath($Path)
}

# Throws unless Path is a plain file (not a link, junction or folder), as check_site_file: the installer runs
# elevated, and a link would have it read, and hand on, whatever the link points at.
function Assert-SiteFile([string]$Path) {
    $item = Get-Item -LiteralPath $Path -Force -ErrorAction SilentlyContinue
    if (-not ($item -is [System.IO.FileInfo]) -or ($item.Attributes -band [System.IO.FileAttributes]::ReparsePoint)) {
        throw "$Path is not a regular file (a link, FIFO or device there is refused, and not read); put the file itself there."
    }
}

# Each file or folder under Root (not Root), walked one folder at a time: a link or junction is handed
# back, never entered.
function Get-TreeItem([string]$Root) {
    $folders = New-Object System.Collections.Generic.Queue[string]
    $folders.Enqueue($Root)
    while ($folders.Count -gt 0) {
        foreach ($item in @(Get-ChildItem -LiteralPath $folders.Dequeue() -Force -ErrorAction Stop)) {
            $item
            if ($item.PSIsContainer -and -not ($item.Attributes -band [System.IO.FileAttributes]::ReparsePoint)) { $folders.Enqueue($item.FullName) }
        }
    }
}

# --- the package -------------------------------------------------------------------------------------------

function Get-VendorCertificate([string]$Path) {
    try { return New-Object System.Security.Cryptography.X509Certificates.X509Certificate2 -ArgumentList $Path }
    catch { return $null }
}

# sha256 of the certificate's DER, 64 lower-case hex digits; '' when Path holds no certificate.
function Get-CertFingerprint([string]$Path) {
    $cert = Get-VendorCertificate $Path
    if (-not $cert) { return '' }
    $sha = [System.Security.Cryptography.SHA256]::Create()
    try { return (($sha.ComputeHash($cert.RawData) | ForEach-Object { $_.ToString('x2') }) -join '') }
    finally { $sha.Dispose() }
}

# $true when SigFile is the vendor's RSA-PSS/SHA-256 signature (salt 32: the hash's length, which is what
# .NET's Pss uses) over File, hashed as a stream: packages are GBs.
function Test-VendorSignature([string]$CertPath, [string]$File, [string]$SigFile) {
    $cert = Get-VendorCertificate $CertPath
    if (-not $cert) { return $false }
    $rsa = [System.Security.Cryptography.X509Certificates.RSACertificateExtensions]::GetRSAPublicKey($cert)
    if (-not $rsa) { return $false }
    $sha = [System.Security.Cryptography.SHA256]::Create()
    $stream = [System.IO.File]::OpenRead($File)
    try { $hash = $sha.ComputeHash($stream) } finally { $stream.Dispose(); $sha.Dispose() }
    $signature = [System.IO.File]::ReadAllBytes($SigFile)
    try {
        return $rsa.VerifyHash($hash, $signature, [System.Security.Cryptography.HashAlgorithmName]::SHA256,
                               [System.Security.Cryptography.RSASignaturePadding]::Pss)
    } catch { return $false }
}

function ConvertTo-Fingerprint([string]$Value) { return ($Value -replace '[: ]', '').ToLowerInvariant() }

# Copy (new, in a private folder) holds File as it was read once; $false when File is not a plain file (a
# link, a folder), cannot be read, or is larger than MaxBytes. As private_copy. Windows has no FIFO to wait on
# in a folder, and what is copied is verified before it is used, so a link swapped in after the check reads
# only what the signature check then refuses.
function Copy-PrivateFile([string]$File, [string]$Copy, [long]$MaxBytes) {
    $item = Get-Item -LiteralPath $File -Force -ErrorAction SilentlyContinue
    if (-not ($item -is [System.IO.FileInfo]) -or ($item.Attributes -band [System.IO.FileAttributes]::ReparsePoint)) { return $false }
    $in = $null
    $out = $null
    try {
        # FileShare.Read: nobody writes File while it is read.
        $in = New-Object System.IO.FileStream -ArgumentList $item.FullName, ([System.IO.FileMode]::Open), ([System.IO.FileAccess]::Read), ([System.IO.FileShare]::Read)
        $out = New-Object System.IO.FileStream -ArgumentList $Copy, ([System.IO.FileMode]::CreateNew), ([System.IO.FileAccess]::Write), ([System.IO.FileShare]::None)
        $buffer = New-Object byte[] 1048576
        [long]$total = 0
        while (($count = $in.Read($buffer, 0, $buffer.Length)) -gt 0) {
            $total += $count
            if ($total -gt $MaxBytes) { return $false }
            $out.Write($buffer, 0, $count)
        }
        return $true
    } catch { return $false }
    finally {
        if ($in) { $in.Dispose() }
        if ($out) { $out.Dispose() }
    }
}

# Sets VendorCert to Staging's copy of the certificate to verify with (-VendorKey, or the package's own
# certificate when it has the -VendorFingerprint), or throws. As vendor_cert.
function Resolve-VendorCertificate([string]$Package, [string]$VendorKey, [string]$VendorFingerprint) {
    $script:VendorCert = Join-Path $script:Staging 'vendor_package.crt'
    $wanted = ''
    if ($VendorFingerprint) {
        $wanted = ConvertTo-Fingerprint $VendorFingerprint
        if ($wanted -cnotmatch '^[0-9a-f]{64}\z') { throw '-VendorFingerprint must be the 64 hex digits printed on the delivery note.' }
    }
    if ($VendorKey) {
        if (-not (Copy-PrivateFile $VendorKey $script:VendorCert 65536)) { throw "-VendorKey $VendorKey is not a readable file; use the vendor_package.crt the vendor sent with your token." }
        if (-not (Get-VendorCertificate $script:VendorCert)) { throw "-VendorKey $VendorKey is not the vendor's certificate (vendor_package.crt, PEM)." }
        $actual = Get-CertFingerprint $script:VendorCert
        if ($wanted -and $actual -cne $wanted) { throw "-VendorKey $VendorKey does not have the fingerprint given with -VendorFingerprint; ask the vendor which is right." }
    } elseif ($wanted) {
        if (-not (Copy-PrivateFile (Join-Path $Package 'vendor_package.crt') $script:VendorCert 65536)) {
            throw 'the package holds no vendor_package.crt to compare with the fingerprint; pass -VendorKey instead.'
        }
        $actual = Get-CertFingerprint $script:VendorCert
        if ($actual -cne $wanted) { throw "the package's signing certificate does not match the fingerprint from the vendor; do not install this package." }
    } else {
        throw $script:NoKeySentence
    }
}

# Unless this is the only install.ps1 running on this host, throws: two at once would snapshot, configure and
# roll back the same folder over each other. As one_at_a_time: the lock is a file held open without sharing in
# $env:ProgramData\chexnet, a folder only Administrators and SYSTEM may write; Windows drops it when the
# process ends, however it ends.
function Enter-OneAtATime {
    $parent = Join-Path ([Environment]::GetFolderPath('CommonApplicationData')) 'chexnet'
    if (-not (Test-Entry $parent)) { New-PrivateFolder $parent }
    Set-PrivateAccess $parent
    try {
        $script:InstallLock = [System.IO.File]::Open((Join-Path $parent 'install.lock'), 'OpenOrCreate', 'ReadWrite', 'None')
    } catch [System.IO.IOException] {
        throw 'another install or upgrade is running on this host; wait until it has finished, then run this again.'
    }
}

# A new folder under $env:ProgramData\chexnet that only Administrators and SYSTEM may open (as bash's mktemp
# -d, 0700 root): Staging. Its parent is made Administrators' too, since whoever may rename what a folder
# holds could swap the staging folder for another.
function New-PackageStaging {
    $parent = Join-Path ([Environment]::GetFolderPath('CommonApplicationData')) 'chexnet'
    if (-not (Test-Entry $parent)) { New-PrivateFolder $parent }
    elseif (-not (Get-Item -LiteralPath $parent -Force).PSIsContainer) { throw "cannot make a private folder in $parent to verify the package in." }
    try { Set-PrivateAccess $parent } catch { throw "cannot make a private folder in $parent to verify the package in." }
    $script:Staging = Join-Path $parent ('staging-' + [guid]::NewGuid().ToString('N'))
    try { New-PrivateFolder $script:Staging } catch { $script:Staging = ''; throw "cannot make a private folder in $parent to verify the package in." }
}

# The tarball the vendor sent (Tarball, or the <Package>.tar.gz beside the unpacked folder Package) and its
# .sig are copied into Staging; the signature is checked over that copy, which is then unpacked there and
# checked again (Test-Package). Sets Staged to that folder: from then on the caller reads only Staged, never
# the unpacked folder, which its owner may change at any time. Nothing changes on the host but Staging if
# this throws. As stage_package; what it protects against, and what not: DESIGN.md "Offline package trust".
function Initialize-PackageStaging([string]$Package, [string]$Tarball, [string]$VendorKey, [string]$VendorFingerprint) {
    $Package = (Get-FullPath $Package).TrimEnd('\', '/')
    $name = [System.IO.Path]::GetFileName($Package)
    if (-not $Tarball) { $Tarball = Join-Path ([System.IO.Path]::GetDirectoryName($Package)) "$name.tar.gz" }
    $Tarball = Get-FullPath $Tarball
    if (-not (Test-Path -LiteralPath $Tarball -PathType Leaf) -or -not (Test-Path -LiteralPath "$Tarball.sig" -PathType Leaf)) {
        throw "the installer verifies the tarball the vendor sent before it uses anything from it: keep $name.tar.gz and its .sig beside the unpacked folder, or name it with -Package FILE."
    }
    New-PackageStaging
    # The tarball's copy and what it unpacks to, with room to spare.
    $need = [long][math]::Floor((Get-Item -LiteralPath $Tarball -Force).Length / 1048576) * 2 + 64
    $free = [long][math]::Floor((New-Object System.IO.DriveInfo ([System.IO.Path]::GetPathRoot($script:Staging))).AvailableFreeSpace / 1048576)
    if ($free -lt $need) { throw "$([System.IO.Path]::GetDirectoryName($script:Staging)) has $free MiB free; verifying the package needs $need MiB there (twice the tarball); free some space." }
    Resolve-VendorCertificate $Package $VendorKey $VendorFingerprint
    $copy = Join-Path $script:Staging 'package.tar.gz'
    if (-not (Copy-PrivateFile "$Tarball.sig" "$copy.sig" 65536) -or -not (Copy-PrivateFile $Tarball $copy ($need * 1048576))) {
        throw "$Tarball or its .sig cannot be read as a plain file; copy them from the delivery medium again."
    }
    if (-not (Test-VendorSignature $script:VendorCert $copy "$copy.sig")) {
        throw "the vendor signature over $Tarball does not verify with the vendor's certificate; do not install this package."
    }
    Write-Host "==> tarball verified: vendor signature OK over $([System.IO.Path]::GetFileName($Tarball)) (certificate fingerprint $(Get-CertFingerprint $script:VendorCert))"
    $unpacked = Join-Path $script:Staging 'unpacked'
    New-PrivateFolder $unpacked
    # Windows' own tar (Windows 10 1803 and later), by its full path: no other tar.exe on PATH is run.
    & (Join-Path ([Environment]::SystemDirectory) 'tar.exe') -xzf $copy -C $unpacked
    if ($LASTEXITCODE -ne 0) { throw "the signed tarball $Tarball cannot be unpacked; copy it from the delivery medium again." }
    [System.IO.File]::Delete($copy)
    $top = @(Get-ChildItem -LiteralPath $unpacked -Force)
    if ($top.Count -ne 1 -or $top[0].Name -cnotmatch '^chexnet-offline-[0-9A-Za-z._-]+\z' -or -not ($top[0] -is [System.IO.DirectoryInfo])) {
        throw "the signed tarball $Tarball does not hold one chexnet-offline-* folder; ask the vendor."
    }
    $script:Staged = $top[0].FullName
    Test-Package $script:Staged $script:VendorCert
}

# What Initialize-PackageStaging made goes (install.ps1 and load-images.ps1 call it in a finally block).
# .NET's recursive delete removes a link or junction without entering it (Remove-Item -Recurse in Windows
# PowerShell 5.1 may follow one); read-only files are made writable first, without following a link either.
function Remove-PackageStaging {
    if (-not $script:Staging -or -not (Test-Entry $script:Staging)) { return }
    try {
        foreach ($item in @(Get-TreeItem $script:Staging)) {
            if (($item.Attributes -band [System.IO.FileAttributes]::ReadOnly) -and -not ($item.Attributes -band [System.IO.FileAttributes]::ReparsePoint)) {
                $item.Attributes = $item.Attributes -band -bnot [System.IO.FileAttributes]::ReadOnly
            }
        }
        [System.IO.Directory]::Delete($script:Staging, $true)
        $script:Staging = ''
    } catch { Write-Warning "$script:Staging could not be removed ($($_.Exception.Message)); remove it by hand." }
}

# The one line of Staged\File, if it matches Pattern; else throws. As package_value.
function Get-PackageValue([string]$File, [string]$Pattern) {
    $path = Join-Path $script:Staged $File
    $value = ''
    if (Test-Path -LiteralPath $path -PathType Leaf) { $value = $script:Latin1.GetString([System.IO.File]::ReadAllBytes($path)).TrimEnd([char[]]@([char]10)) }
    if ($value -cnotmatch $Pattern) { throw "the package's $File is not valid; ask the vendor." }
    return $value
}

# --- downgrades: every package carries SEQUENCE (signed, increasing from build to build) ----------------
# The site keeps the sequence and version of the package it last installed in Dir\.package-sequence.
$script:SequencePattern = '^[1-9][0-9]{0,17}\z'
$script:VersionPattern = '^[0-9A-Za-z][0-9A-Za-z._+-]{0,63}\z'

# <0, 0 or >0 as A sorts before, with or after B in 'sort -V' (GNU filevercmp, then byte order on a tie).
function Compare-Version([string]$A, [string]$B) {
    # The length of S less its suffix (\.[A-Za-z~][A-Za-z0-9~]*)*$, as filevercmp cuts it.
    function Get-PrefixLength([string]$S) {
        $prefix = 0
        $i = 0
        while ($i -lt $S.Length) {
            $i++
            $prefix = $i
            while ($i + 1 -lt $S.Length -and $S[$i] -ceq '.' -and ("$($S[$i + 1])" -cmatch '^[A-Za-z~]\z')) {
                $i += 2
                while ($i -lt $S.Length -and ("$($S[$i])" -cmatch '^[A-Za-z0-9~]\z')) { $i++ }
            }
        }
        return $prefix
    }
    function Get-Order([string]$S, [int]$Position, [int]$Length) {
        if ($Position -eq $Length) { return -1 }
        $c = [int][char]$S[$Position]
        if ($c -ge 48 -and $c -le 57) { return 0 }
        if (($c -ge 65 -and $c -le 90) -or ($c -ge 97 -and $c -le 122)) { return $c }
        if ($c -eq 126) { return -2 }
        return $c + 256
    }
    function Test-Digit([string]$S, [int]$Position, [int]$Length) {
        return $Position -lt $Length -and [int][char]$S[$Position] -ge 48 -and [int][char]$S[$Position] -le 57
    }
    function Compare-Run([string]$S1, [int]$Length1, [string]$S2, [int]$Length2) {
        $p1 = 0
        $p2 = 0
        while ($p1 -lt $Length1 -or $p2 -lt $Length2) {
            $firstDiff = 0
            while (($p1 -lt $Length1 -and -not (Test-Digit $S1 $p1 $Length1)) -or ($p2 -lt $Length2 -and -not (Test-Digit $S2 $p2 $Length2))) {
                $o1 = Get-Order $S1 $p1 $Length1
                $o2 = Get-Order $S2 $p2 $Length2
                if ($o1 -ne $o2) { return $o1 - $o2 }
                $p1++
                $p2++
            }
            while ($p1 -lt $Length1 -and $S1[$p1] -ceq '0') { $p1++ }
            while ($p2 -lt $Length2 -and $S2[$p2] -ceq '0') { $p2++ }
            while ((Test-Digit $S1 $p1 $Length1) -and (Test-Digit $S2 $p2 $Length2)) {
                if (-not $firstDiff) { $firstDiff = [int][char]$S1[$p1] - [int][char]$S2[$p2] }
                $p1++
                $p2++
            }
            if (Test-Digit $S1 $p1 $Length1) { return 1 }
            if (Test-Digit $S2 $p2 $Length2) { return -1 }
            if ($firstDiff) { return $firstDiff }
        }
        return 0
    }
    $prefixA = Get-PrefixLength $A
    $prefixB = Get-PrefixLength $B
    $result = Compare-Run $A $prefixA $B $prefixB
    if (-not $result -and -not ($prefixA -eq $A.Length -and $prefixB -eq $B.Length)) { $result = Compare-Run $A $A.Length $B $B.Length }
    if (-not $result) { $result = [string]::CompareOrdinal($A, $B) }
    return $result
}

# Throws before anything changes when Staged is older than the package installed in Dir (a lower sequence;
# for a site installed before sequences, a lower version), unless Allow. As check_not_older.
function Assert-NotOlder([string]$Dir, [bool]$Allow) {
    $record = Join-Path $Dir '.package-sequence'
    $sequence = Get-PackageValue 'SEQUENCE' $script:SequencePattern
    $version = Get-PackageValue 'VERSION' $script:VersionPattern
    $oldSequence = ''
    $oldVersion = ''
    if (Test-Entry $record) {
        Assert-SiteFile $record
        $first = ($script:Latin1.GetString([System.IO.File]::ReadAllBytes($record)) -split "`n", 2)[0]
        $fields = @($first.Trim([char[]]@(' ', "`t")) -split '[ \t]+', 2)
        $oldSequence = $fields[0]
        if ($fields.Count -gt 1) { $oldVersion = $fields[1] }
        if ($oldSequence -cnotmatch $script:SequencePattern) { throw "$record is damaged; remove it only if you know which version runs here." }
        if ([decimal]$sequence -ge [decimal]$oldSequence) { return }
    } elseif (Test-Path -LiteralPath (Join-Path $Dir '.env') -PathType Leaf) {
        $oldVersion = Get-EnvValue 'CHEXNET_VERSION'
        if (-not $oldVersion -or (Compare-Version $oldVersion $version) -le 0) { return }
        $oldSequence = 'unknown'
    } else {
        return
    }
    if ($Allow) {
        Write-Warning "installing version $version (sequence $sequence) over the newer $oldVersion (sequence $oldSequence): -AllowDowngrade"
        return
    }
    throw "this package (version $version, sequence $sequence) is older than the one installed in $Dir (version $oldVersion, sequence $oldSequence); pass -AllowDowngrade only if the vendor told you to install an older version."
}

# Dir\.package-sequence names Staged's sequence and version (after a good install), as record_installed.
function Save-InstalledSequence([string]$Dir) {
    $text = "$(Get-PackageValue 'SEQUENCE' $script:SequencePattern) $(Get-PackageValue 'VERSION' $script:VersionPattern)`n"
    $record = Join-Path $Dir '.package-sequence'
    [System.IO.File]::WriteAllText("$record.tmp", $text, (New-Object System.Text.UTF8Encoding $false))
    # In one step, as mv -f: File.Replace where a record exists, File.Move where none does.
    # [NullString]: PowerShell hands a .NET string parameter '' for $null, and '' is no 'no backup'.
    if ([System.IO.File]::Exists($record)) { [System.IO.File]::Replace("$record.tmp", $record, [NullString]::Value) }
    else { [System.IO.File]::Move("$record.tmp", $record) }
}

# --- SHA256SUMS --------------------------------------------------------------------------------------------
# The characters a path in the package may hold, the same set a SHA256SUMS line allows (as PORTABLE_PATH_CHARS
# and SUMS_LINE): no space, no control character, nothing a line-based tool would split on.
$script:PortablePath = '^[A-Za-z0-9._/-]+\z'
$script:SumsLine = '^[0-9a-f]{64}  [A-Za-z0-9_.][A-Za-z0-9._-]*(/[A-Za-z0-9._-]+)*\z'
$script:BadSumsLine = "SHA256SUMS holds a line that is not '<sha256>  <relative path>'; do not install this package."

# The lines of Package\SHA256SUMS as they are on disk: read as bytes, not with Get-Content, which would drop
# a BOM and split on a lone CR. Lines end with LF; the last one may lack it, as grep and sed read it.
function Read-SumsLines([string]$Package) {
    $text = $script:Latin1.GetString([System.IO.File]::ReadAllBytes((Join-Path $Package 'SHA256SUMS')))
    # Ordinal: with ICU, a culture's comparison does not find the LF of a CR LF.
    if ($text.EndsWith("`n", [System.StringComparison]::Ordinal)) { $text = $text.Substring(0, $text.Length - 1) }
    $text.Split([char]10)
}

# The paths SHA256SUMS lists, with '/' separators (after Test-Package: each is portable). As listed_files.
function Get-ListedFiles([string]$Package) {
    foreach ($line in @(Read-SumsLines $Package)) { if ($line -cmatch '^[0-9a-f]{64}  ') { $line.Substring(66) } }
}

# Each line is '<64 hex>  <portable relative path>', nothing else (no CR, BOM, NUL, '.' or '..' part), and
# no path is listed twice (compared without case, as Windows would: ordinal, so no culture's 'i' differs).
# As check_sums_lines.
function Test-SumsLines([string]$Package) {
    if ((Get-Item -LiteralPath (Join-Path $Package 'SHA256SUMS') -Force).Length -eq 0) { throw $script:BadSumsLine }
    $lines = @(Read-SumsLines $Package)
    foreach ($line in $lines) {
        if ($line -cnotmatch $script:SumsLine -or $line -cmatch '(  |/)\.\.?(/|\z)') { throw $script:BadSumsLine }
    }
    $seen = New-Object 'System.Collections.Generic.HashSet[string]' ([System.StringComparer]::OrdinalIgnoreCase)
    foreach ($line in $lines) {
        if (-not $seen.Add($line.Substring(66))) { throw "SHA256SUMS lists $($line.Substring(66)) more than once; do not install this package." }
    }
}

# A name for a sentence: control and non-ASCII characters shown as \xNN, so it stays one line.
function Format-Name([string]$Name) {
    return [regex]::Replace($Name, '[^\x20-\x7E]', { param($m) '\x{0:x2}' -f [int][char]$m.Value })
}

# Every entry under Root is a plain file or folder with a portable name (letters, digits, '.', '_', '-',
# '/'), walked one folder at a time so that no link or junction is followed. As check_entries.
function Test-PackageEntries([string]$Root) {
    try { $items = @(Get-TreeItem $Root) }
    catch { throw "$Root cannot be read in full; run as the user who unpacked it, or as Administrator." }
    foreach ($item in $items) {
        $relative = $item.FullName.Substring($Root.Length + 1) -replace '\\', '/'
        if ($relative -cnotmatch $script:PortablePath) {
            throw "the package holds an entry named $(Format-Name $relative), which has a character other than letters, digits, '.', '_', '-' and '/'; do not install this package."
        }
        $odd = [System.IO.FileAttributes]::ReparsePoint -bor [System.IO.FileAttributes]::Device
        if (($item.Attributes -band $odd) -or -not ($item -is [System.IO.FileInfo] -or $item -is [System.IO.DirectoryInfo])) {
            throw "the package holds $relative, which is not a plain file; do not install this package."
        }
    }
}

# Only plain files and folders with portable names, the signature over SHA256SUMS, its lines, no file it
# does not list, every checksum. Changes nothing on the host; step for step with verify_package.
function Test-Package([string]$Package, [string]$CertPath) {
    $root = (Get-FullPath $Package).TrimEnd('\', '/')
    $sums = Join-Path $root 'SHA256SUMS'
    $sig = Join-Path $root 'SHA256SUMS.sig'
    if (-not (Test-Path -LiteralPath $sums -PathType Leaf) -or -not (Test-Path -LiteralPath $sig -PathType Leaf)) { throw "$Package has no SHA256SUMS or SHA256SUMS.sig; is this an unpacked chexnet-offline package?" }
    # First, so that nothing below opens a link or device (SHA256SUMS itself included).
    Test-PackageEntries $root
    if (-not (Test-VendorSignature $CertPath $sums $sig)) { throw "the vendor signature over SHA256SUMS does not verify with $CertPath; do not install this package." }
    Test-SumsLines $root
    # The files present less the files listed, compared exactly (case included, as on Linux): any one left is refused.
    $listed = New-Object 'System.Collections.Generic.HashSet[string]' ([System.StringComparer]::Ordinal)
    foreach ($file in @(Get-ListedFiles $root)) { [void]$listed.Add($file) }
    foreach ($item in @(Get-TreeItem $root)) {
        if ($item.PSIsContainer) { continue }
        $relative = $item.FullName.Substring($root.Length + 1) -replace '\\', '/'
        if ($relative -ceq 'SHA256SUMS' -or $relative -ceq 'SHA256SUMS.sig') { continue }
        if (-not $listed.Contains($relative)) { throw "the package holds $(Format-Name $relative), which SHA256SUMS does not list; do not install this package." }
    }
    foreach ($line in @(Read-SumsLines $root)) {
        $path = Join-Path $root $line.Substring(66)
        if (-not (Test-Path -LiteralPath $path -PathType Leaf) -or
            (Get-FileHash -LiteralPath $path -Algorithm SHA256).Hash.ToLowerInvariant() -cne $line.Substring(0, 64)) {
            throw 'a file of the package is damaged or missing (SHA256SUMS); copy the package again.'
        }
    }
    Write-Host "==> package verified: vendor signature OK (certificate fingerprint $(Get-CertFingerprint $CertPath))"
}

# Dest (new) holds Package\File, a file SHA256SUMS lists (after Test-Package), refused unless it is the file
# that was verified. As copy_listed.
function Copy-ListedFile([string]$Package, [string]$File, [string]$Dest) {
    $wanted = ''
    foreach ($line in @(Read-SumsLines $Package)) {
        if ($line.Length -gt 66 -and $line.Substring(66) -ceq $File) { $wanted = $line.Substring(0, 64); break }
    }
    [System.IO.File]::Delete($Dest)
    if (-not (Copy-PrivateFile (Join-Path $Package $File) $Dest ([long]::MaxValue)) -or -not $wanted -or
        (Get-FileHash -LiteralPath $Dest -Algorithm SHA256).Hash.ToLowerInvariant() -cne $wanted) {
        [System.IO.File]::Delete($Dest)
        throw "$Package/$File changed after the package was verified; unpack the package again."
    }
}

# docker load the image archives SHA256SUMS lists (after Test-Package). As load_images.
function Import-PackageImages([string]$Package) {
    foreach ($archive in @(Get-ListedFiles $Package)) {
        if ($archive -cnotlike 'images/*.tar.gz') { continue }
        Write-Host "==> docker load $archive"
        & docker load -i (Join-Path $Package $archive) | Out-Host
        if ($LASTEXITCODE -ne 0) { throw "docker load $archive failed." }
    }
}
